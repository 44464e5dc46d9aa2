"""The notifier actor: delivers results by email, Slack, signed webhook or in-app event, with retries."""
