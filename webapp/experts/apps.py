from django.apps import AppConfig


class ExpertsConfig(AppConfig):
    name = "webapp.experts"
    label = "experts"
    verbose_name = "Experts and mixtures"
