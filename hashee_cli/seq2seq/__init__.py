"""HashEE for encoder-decoder models: exits in both stacks, cached decoding, summarisation data, ROUGE and cost."""
