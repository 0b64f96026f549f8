"""Running a model: batched prediction and pooled features over datasets, metrics and plots, transformers-style
pipelines, and linear few-shot evaluation."""
