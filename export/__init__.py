"""Model export (installed as ``fashionrec_export``): the only code that needs TensorFlow."""
