"""The pipeline as an AWS Lambda function: its handler, the package apply builds, and the local
emulation of the event source mapping that feeds it."""
