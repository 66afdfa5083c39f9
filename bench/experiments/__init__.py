"""The experiments that train models for the README: baselines, seeds, scan rules, time to accuracy."""
