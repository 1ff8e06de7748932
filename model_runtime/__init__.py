"""Model execution shared by the model server and the async worker: onnxruntime sessions
(CUDA when present, CPU otherwise), payload codecs and output encoding."""
