"""`bigtransfer serve`: a KServe v2 inference server with dynamic batching, a page to try the model, and metrics."""
