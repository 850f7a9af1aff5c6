"""R: the Ray layer — everything that imports Ray: study inputs, the local Ray, Tune studies, trials
and their training loop, Ray Data streaming, the teacher cache, TensorBoard logging, live gauges,
checkpoint pruning and recovery. Imports point down into the pure core (data, models, distill,
metrics, evaluation), never the other way."""
