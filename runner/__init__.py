"""pipeline: a declarative runner for streaming ETL on Amazon Kinesis."""
