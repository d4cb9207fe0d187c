"""The generated demo dataset: seated figures doing micro-gestures, in the real iMiGUE layouts."""
from migfuse.synth.dataset import LAYOUTS, generate_dataset

__all__ = ["LAYOUTS", "generate_dataset"]
