"""A stage's language model in Ray Data's own LLM processor (`ray.data.llm`, the vLLM engine).

In: the dataset of rows (pipeline/rows.py wire format) and the stage's `LanguageModelProcessor` (its engine
config, and how a row becomes a request and an answer goes back into the row). Out: the same rows, answered.
vLLM batches the requests continuously across its replicas. Needs `pip install 'rushes[vllm]'`.
"""
from __future__ import annotations

import pickle
import time

import ray.data

from stages.contract import LanguageModelProcessor

# A row with nothing to ask still passes through the processor: it asks for one token of this.
# (`processor.config` sets should_continue_on_error: a failed request is that row's error, not the dataset's.)
IDLE_REQUEST = {"messages": [{"role": "user", "content": "-"}], "sampling_params": {"max_tokens": 1}}


def apply(ds: ray.data.Dataset, processor: LanguageModelProcessor) -> ray.data.Dataset:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    def pre(row: dict) -> dict:
        r = pickle.loads(row["row"])
        request = processor.request(r)
        return {"row": pickle.dumps(r, protocol=5), "asked": request is not None, "start": time.time(),
                **(request or IDLE_REQUEST)}

    def post(row: dict) -> dict:
        r = pickle.loads(row["row"])
        if row["asked"]:
            processor.answer(r, {"text": row["generated_text"], "input_tokens": row.get("num_input_tokens"),
                                 "output_tokens": row["num_generated_tokens"], "seconds": time.time() - row["start"]})
        return {"row": pickle.dumps(r, protocol=5)}

    def failed(row: dict) -> dict:
        """A request that failed bypasses `post` with its whole data (should_continue_on_error): its row gets the
        error as its answer, and every row leaves with the wire format's one column."""
        error = row.get("__inference_error__") or ""
        if not error:
            return {"row": row["row"]}
        r = pickle.loads(row["row"])
        if row.get("asked", True):
            processor.answer(r, {"text": "", "input_tokens": None, "output_tokens": 0, "error": f"vllm: {error}",
                                 "seconds": time.time() - row.get("start", time.time())})
        return {"row": pickle.dumps(r, protocol=5)}

    ds = build_processor(vLLMEngineProcessorConfig(**processor.config), preprocess=pre, postprocess=post)(ds)
    return ds.map(failed)
