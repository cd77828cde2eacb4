"""Sleep: turn verified fixes into a LoRA adapter (torch + peft, or mlx-lm)."""
