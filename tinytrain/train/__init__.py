"""The training compiler: schemes, autodiff, scheduling, memory plan, integer training."""
