"""Engine building, the last step of the export: INT8 quantisation (``quantize``), its
calibration frames (``calib``), the TensorRT op check (``trt_ops``) and the TensorRT plan
build (``build``; ``hepascope build``: ``cli``). The engines that run the results live in
``hepascope.engines``."""
