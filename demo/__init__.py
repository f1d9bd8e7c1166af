"""The Gradio demo (installed as ``fashionrec_demo``): UI only, all logic lives in the library."""
