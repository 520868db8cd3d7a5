# Local settings of this server (an Arches project keeps its secrets and hosts here).
# fab deploy adds its managed block below and leaves these lines alone.
DEMO_GREETING = "hello from settings_local"
