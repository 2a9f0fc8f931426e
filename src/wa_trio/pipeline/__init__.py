"""wa_trio.pipeline.consumer."""
