-- Kept in step with migrations/sqlite/0014_job_lease.sql.
-- The attempt fence of a running job: the delivery that claimed it (lease_owner: its message
-- id) holds it until lease_until (epoch ms), renewing it while it runs. Another delivery of the
-- job meanwhile does not run it; a redelivery of the same message (its run died) takes it over
-- at once; anyone takes it over once the lease expired. Writes of a run that lost its lease
-- are refused.
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
