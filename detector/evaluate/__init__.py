"""Evaluation: COCO metrics of detections against a validated dataset."""
