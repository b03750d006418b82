-- What the platform's webhook last answered a confirmation's relay: the
-- HTTP status (NULL when no answer came: a timeout, a refused connection)
-- and the first bytes of the body. A 4xx other than 408/429 is final: the
-- row's status becomes `rejected` and it is not tried again.
ALTER TABLE action_confirms ADD COLUMN response_status BIGINT;
ALTER TABLE action_confirms ADD COLUMN response_body TEXT;
