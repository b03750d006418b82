-- Providers report what happened to a message after Herald handed it over
-- (Twilio status callbacks, SendGrid's Event Webhook). Each report is
-- recorded once by the provider's own event id, so a retried webhook
-- changes nothing the second time. Deliveries are found by the id the
-- provider gave the message.
CREATE TABLE provider_events (
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    status       TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id);
