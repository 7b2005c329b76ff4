"""The openai backend against a real OpenAI-compatible server (`transformers serve` with builtin:tiny-qwen),
through a fault-injecting proxy: retries, timeouts, errors that are not retried, a dead endpoint."""
import pytest

from stages.models.rewriters import EndpointRewriter, messages_for
from tests.conftest import LLM_KEY
from tests.ports import free_port

pytestmark = pytest.mark.timeout(300)
CHAT = messages_for("a cat walking along a beach at sunset", "Rewrite the video idea.", [])


def rewriter(url, model, **kw):
    args = dict(api_key=LLM_KEY, timeout_s=20.0, max_retries=3, concurrency=4)
    return EndpointRewriter(url, model, **{**args, **kw})


def test_429_and_500_are_retried_then_succeed(llm_server, faulty_llm):
    faulty_llm.faults = ["429", "500", "429"]
    r = rewriter(faulty_llm.url, llm_server.model).rewrite([CHAT], [7], 0.7, 0.9, 48)[0]
    assert r.error is None and r.input_tokens > 0 and r.output_tokens >= 1
    assert faulty_llm.requests == 4
    assert faulty_llm.authorization == {f"Bearer {LLM_KEY}"}


def test_a_hung_request_times_out_and_is_retried(llm_server, faulty_llm):
    faulty_llm.faults = ["hang"]
    r = rewriter(faulty_llm.url, llm_server.model, timeout_s=2.0).rewrite([CHAT], [7], 0.7, 0.9, 48)[0]
    assert r.error is None
    assert faulty_llm.requests == 2  # one timed out, one answered


def test_other_errors_fail_at_once(llm_server, faulty_llm):
    r = rewriter(faulty_llm.url, "not-the-served-model").rewrite([CHAT], [7], 0.7, 0.9, 48)[0]
    assert r.error.startswith(f"endpoint {faulty_llm.url}/chat/completions: HTTP 400")
    assert r.error.endswith("(not retried)")
    assert faulty_llm.requests == 1


def test_the_same_seed_gives_the_same_rewrite(llm_server, faulty_llm):
    # one request at a time: `transformers serve` seeds torch's global RNG per request, so concurrent requests
    # share it (vLLM and SGLang keep a generator per request)
    rw = rewriter(faulty_llm.url, llm_server.model, concurrency=1)
    texts = [r.text for r in rw.rewrite([CHAT] * 4, [1, 2, 3, 1], 0.7, 0.9, 48)]
    assert texts[0] == texts[3]
    assert len(set(texts[:3])) > 1


def test_a_dead_endpoint_is_given_up_on_quickly():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    rw = rewriter(dead, "m", max_retries=2, concurrency=1)
    results = rw.rewrite([CHAT] * 8, list(range(8)), 0.7, 0.9, 48)
    assert all(r.error and "cannot connect" in r.error for r in results)
    # the first `concurrency + 2` prompts get every try; after that the endpoint counts as down: one try each
    assert results[0].error.endswith("(after 3 tries)") and results[-1].error.endswith("(after 1 tries)")
    assert rw.requests == 3 * 3 + 5
