"""The paper's tables and figures, built from the evaluation stages' metrics files."""
