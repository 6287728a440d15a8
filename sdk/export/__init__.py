"""Getting spans out of the process: batching with a bounded queue, and the exporters."""
