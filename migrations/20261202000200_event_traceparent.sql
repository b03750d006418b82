-- The W3C traceparent of the publish that made an event (NULL when traces
-- are off): each delivery attempt's span continues that trace, so one trace
-- shows an event from POST /v1/events through the queue to the provider.
ALTER TABLE events ADD COLUMN traceparent TEXT;
