-- Store one delivery report in one round trip (PostgreSQL): raw event, never-backwards state,
-- bounce record (upsert or withdrawal) and, for an Emarsys client's message, the outbox row.
-- Every data-modifying CTE runs exactly once, in the statement's own transaction, whether or not
-- the final SELECT reads it.
WITH ev AS (
    INSERT INTO raw_events (vendor, kind, client_id, vendor_message_id, fingerprint, params, outcome,
                            received_at)
    VALUES (:vendor, :kind, CAST(:client_id AS uuid), :vmid, :fingerprint, CAST(:params AS json), :outcome,
            :now)
    ON CONFLICT (fingerprint) DO NOTHING
    RETURNING id
), st AS (
    INSERT INTO message_states AS cur (vendor, vendor_message_id, client_id, emarsys_message_id, recipient,
                                       outcome, error_type, rank, status_code, status_text, event_at, updated_at)
    SELECT :vendor, :vmid, CAST(:client_id AS uuid), CAST(:emid AS varchar), CAST(:recipient AS varchar),
           :outcome, CAST(:error_type AS varchar), :rank, :status_code, :status_text, :event_at, :now
    FROM ev
    ON CONFLICT (vendor, vendor_message_id) DO UPDATE SET
        recipient = COALESCE(EXCLUDED.recipient, cur.recipient),
        client_id = COALESCE(cur.client_id, EXCLUDED.client_id),
        emarsys_message_id = COALESCE(cur.emarsys_message_id, EXCLUDED.emarsys_message_id),
        outcome = EXCLUDED.outcome, error_type = EXCLUDED.error_type, rank = EXCLUDED.rank,
        status_code = EXCLUDED.status_code, status_text = EXCLUDED.status_text,
        event_at = EXCLUDED.event_at, updated_at = EXCLUDED.updated_at
    -- Never backwards; and a report through one client's callback URL never changes another's message.
    WHERE (EXCLUDED.rank > cur.rank OR (EXCLUDED.rank = cur.rank AND EXCLUDED.event_at >= cur.event_at))
      AND (EXCLUDED.client_id IS NULL OR cur.client_id IS NULL OR EXCLUDED.client_id = cur.client_id)
      -- A report that says nothing new (a redelivery in other bytes) is kept as a raw event only:
      -- forwarded again, or its bounce served to SAP again, it would be a duplicate.
      AND ((EXCLUDED.outcome, EXCLUDED.error_type, EXCLUDED.status_code, EXCLUDED.status_text, EXCLUDED.event_at)
               IS DISTINCT FROM (cur.outcome, cur.error_type, cur.status_code, cur.status_text, cur.event_at)
           OR (EXCLUDED.recipient IS NOT NULL AND EXCLUDED.recipient IS DISTINCT FROM cur.recipient)
           OR (cur.client_id IS NULL AND EXCLUDED.client_id IS NOT NULL)
           OR (cur.emarsys_message_id IS NULL AND EXCLUDED.emarsys_message_id IS NOT NULL))
    RETURNING cur.id, cur.client_id, cur.emarsys_message_id, cur.recipient
), bounce_upsert AS (
    INSERT INTO bounces AS b (message_state_id, message_id, recipient, status_code, status_text, type,
                              event_at, pulled_at, seq)
    SELECT st.id, :vmid, COALESCE(st.recipient, ''), :status_code, :status_text,
           CAST(:bounce_type AS varchar), :event_at, NULL, ev.id
    FROM st, ev
    -- SAP's buffer holds the bounces of SAP's own traffic: an Emarsys client's message is reported
    -- to Emarsys only, never served to SAP Marketing Cloud.
    WHERE CAST(:bounce_type AS varchar) IS NOT NULL AND st.client_id IS NULL
    ON CONFLICT (message_state_id) DO UPDATE SET
        message_id = EXCLUDED.message_id, recipient = EXCLUDED.recipient,
        status_code = EXCLUDED.status_code, status_text = EXCLUDED.status_text, type = EXCLUDED.type,
        event_at = EXCLUDED.event_at, pulled_at = NULL, seq = EXCLUDED.seq
), bounce_withdraw AS (
    -- The retry worked, or the message turned out to be an Emarsys client's: withdraw the bounce
    -- unless SAP already has it.
    -- A scalar subquery (st has at most one row), so that the plan is an index lookup: as a join,
    -- the planner may scan every bounce for each receipt (found by the ingest benchmark).
    DELETE FROM bounces AS b
    WHERE b.message_state_id = (SELECT st.id FROM st
                                WHERE CAST(:bounce_type AS varchar) IS NULL OR st.client_id IS NOT NULL)
      AND b.pulled_at IS NULL
), forward AS (
    INSERT INTO outbox (client_id, kind, message_key, payload, event_at, state, attempts, next_attempt_at,
                        created_at)
    -- The Emarsys DeliveryReport item, as schemas.callbacks.delivery_report_item builds it (a test
    -- holds the two equal). Built here, it costs nothing for the receipts no client receives.
    SELECT st.client_id, 'delivery_report', LEFT(st.emarsys_message_id, 120),
           CAST(jsonb_build_object(
                    'emarsysMessageId', st.emarsys_message_id,
                    'receivedAt', to_char(:event_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    'status', :outcome,
                    'details', jsonb_build_object('providerStatus', :status_text, 'providerCode', :status_code),
                    'providerMessageIds', jsonb_build_array(:vmid))
                || CASE WHEN :outcome = 'ERROR'
                        THEN jsonb_build_object('errorType', COALESCE(:error_type, 'UNKNOWN'))
                        ELSE '{}' END AS json),
           :event_at, 'pending', 0, :now, :now
    FROM st
    -- Emarsys maps a report by its Emarsys message id: one that is not known yet (the vendor
    -- reported before the send result was recorded) is forwarded when the send result ties it.
    WHERE st.client_id IS NOT NULL AND st.emarsys_message_id IS NOT NULL
      -- A deleted client's late reports (on an open URL) would only be dead letters: Emarsys answers 404.
      AND EXISTS (SELECT 1 FROM clients WHERE clients.id = st.client_id)
)
SELECT (SELECT id FROM ev) AS event_id, (SELECT id FROM st) AS state_id
