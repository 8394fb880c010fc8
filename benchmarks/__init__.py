"""Side-by-side benchmarks of adaptkit against its peers (PEFT, bitsandbytes)."""
