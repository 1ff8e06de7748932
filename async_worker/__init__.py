"""The GPU worker: takes async jobs from SQS, runs them with onnxruntime, writes results to
S3, keeps the job's state in DynamoDB and tells subscribers through SNS."""
