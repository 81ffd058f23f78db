"""HashEE models: token-level early exit on top of Hugging Face encoders."""
