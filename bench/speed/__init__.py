"""The speed measurements: training steps, attention kernels, inference, loading, export, report size; their figures
are in bench/RESULTS.md."""
