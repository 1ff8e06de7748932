"""Demo models and policies, built offline from datasets that ship with scikit-learn."""
