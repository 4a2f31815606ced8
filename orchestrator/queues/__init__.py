"""Reliable queue consumers run as orch Python workers: Redis lists (`redis:QueueConsumer`),
Redis streams (`redis_stream:StreamConsumer`) and beanstalkd (`beanstalkd:QueueConsumer`).
Client libraries are optional extras, imported only by the backend that needs them."""
