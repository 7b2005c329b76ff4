"""Models: the families (adapters over diffusers pipelines, one `ModelFamily` protocol), where weights come
from (checkpoints, built-in models, staging from object storage), LoRAs, speed options, CPU kernels, and the
language and CLIP models. Uses the common base, media and long-video windows; knows nothing of stages."""
