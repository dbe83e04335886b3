"""Evaluation metrics: OCR + rOCR for rich-text images, FID / IS / precision-recall for generated images."""
