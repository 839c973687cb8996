"""Pure ML logic: features, model, calibration, the gate, drift decisions and the model card.

Frames and arrays in, values out: nothing here reads or writes the lake or MLflow.
"""
