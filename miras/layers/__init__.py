"""Token mixers (forward(x, state) -> (y, state)) and their building blocks."""
