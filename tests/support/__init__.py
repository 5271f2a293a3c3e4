"""Helpers the test packages share: real gateways, TLS material, devices, FHIR data.

Tests import helpers from here, never from another test module or a conftest file."""
