"""Library for continual LoRA fine-tuning with state-adaptive training prompts."""
