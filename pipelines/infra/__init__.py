"""The infrastructure phase: a Terraform/OpenTofu workspace and/or a Kubernetes namespace per
environment (`phase.py` composes the providers `terraform.py` and `namespace.py`), and the
finder of what Ephem made and no live environment owns (`orphans.py`)."""
