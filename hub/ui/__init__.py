"""Browser UI (Gradio Blocks) mounted at / of the hub."""
