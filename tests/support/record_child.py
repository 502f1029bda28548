"""A recording process to kill: a paced phantom source written into a frame ring, a
``SessionRecorder`` attached to the ring (the pipeline's own recording path), and one
result per frame from a real ONNX classifier passed to ``on_result``. Runs until killed.

    python record_child.py DIR MODEL RING_NAME [SEED]
"""

from __future__ import annotations

import sys
from pathlib import Path

from hepascope.core.config import load_config
from hepascope.stream.model_loader import open_model
from hepascope.stream.record import SessionRecorder
from hepascope.stream.ring import RingWriter, slot_bytes_for
from hepascope.stream.sources.phantom import PhantomSource


def main(directory: Path, model: Path, ring_name: str, seed: int) -> None:
    classifier = open_model(model, load_config(None), threads=1)
    source = PhantomSource(seed, fps=30.0)
    recorder = SessionRecorder(directory, {"source": f"phantom:{seed}",
                                           "source_id": source.source_id,
                                           "model": str(model.resolve()),
                                           "engine": "onnxruntime"})
    writer: RingWriter | None = None
    with source:
        for frame in source:
            if writer is None:
                writer = RingWriter(ring_name, slots=16,
                                    slot_bytes=slot_bytes_for(frame.height, frame.width, 3))
                recorder.attach(ring_name)
            writer.write(frame)
            probs, stages = classifier.predict(frame)
            recorder.on_result({"seq": frame.seq, "t_capture_ns": frame.t_capture_ns,
                                "probs": [float(p) for p in probs], "latency_ms": stages})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3],
         int(sys.argv[4]) if len(sys.argv) > 4 else 3)
