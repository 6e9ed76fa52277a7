"""The dataset: its profile with the model's tokenizer, image checks and the dataset-size rules."""
