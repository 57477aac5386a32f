# The example infrastructure of an Ephem environment: ten resources that need no network and no
# provider download (`terraform_data` is built into Terraform and OpenTofu). Each stands in for
# what a real module makes per environment; `provisioning_seconds` makes each take a moment, as
# real resources do, so the card has progress to show.
#
# Ephem adds the backend (`pg`, one workspace per environment) and the variables; run it by hand
# with `terraform init && terraform apply -var env_name=try-it`.

variable "env_name" {
  type        = string
  description = "The environment's name ({env.name})."
}

variable "owner" {
  type    = string
  default = "nobody"
}

variable "expires_at" {
  type    = string
  default = ""
}

variable "api_version" {
  type    = string
  default = "latest"
}

variable "domain" {
  type    = string
  default = "preview.shop.example"
}

variable "provisioning_seconds" {
  type    = number
  default = 0.5
}

locals {
  host   = "${var.env_name}.${var.domain}"
  bucket = "shop-${var.env_name}-assets"
  tags   = { environment = var.env_name, owner = var.owner, expires_at = var.expires_at }
}

resource "terraform_data" "network" {
  input = { cidr = "10.42.0.0/16", tags = local.tags }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "subnet" {
  count = 2
  input = { network = terraform_data.network.id, cidr = "10.42.${count.index}.0/24" }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "bucket" {
  input = { name = local.bucket, tags = local.tags }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "database" {
  input = { engine = "postgres", version = "16", subnets = terraform_data.subnet[*].id }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "cache" {
  input = { engine = "redis", subnet = terraform_data.subnet[0].id }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "queue" {
  input = { name = "shop-${var.env_name}-jobs" }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "certificate" {
  input = { domain = local.host }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "ingress" {
  input = { host = local.host, certificate = terraform_data.certificate.id,
  api = var.api_version }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}

resource "terraform_data" "dns_record" {
  input = { name = local.host, target = terraform_data.ingress.id }
  provisioner "local-exec" { command = "sleep ${var.provisioning_seconds}" }
}


output "ingress_domain" {
  value = local.host
}

output "bucket_name" {
  value = local.bucket
}

output "queue_name" {
  value = terraform_data.queue.output.name
}

output "admin_token" {
  value     = sha256("${terraform_data.database.id}/${var.env_name}")
  sensitive = true
}
