-- A job store made by release 0.1.0 (metadata.create_all, PostgreSQL 15): one succeeded job with
-- an event history and a metrics row. pg_dump --inserts --no-owner --no-privileges, with psql's
-- meta-commands and the search_path reset removed; loaded by tests/service/test_migrations.py.

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE public.lbdn_api_keys (
    id character varying(20) NOT NULL,
    tenant character varying(100) NOT NULL,
    name character varying(200),
    secret_sha256 character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone
);

CREATE TABLE public.lbdn_job_events (
    id integer NOT NULL,
    job_id character varying(40) NOT NULL,
    seq integer NOT NULL,
    kind character varying(20) NOT NULL,
    data json NOT NULL,
    created_at timestamp with time zone NOT NULL
);

CREATE SEQUENCE public.lbdn_job_events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.lbdn_job_events_id_seq OWNED BY public.lbdn_job_events.id;

CREATE TABLE public.lbdn_job_metrics (
    job_id character varying(40) NOT NULL,
    epoch integer NOT NULL,
    data json NOT NULL
);

CREATE TABLE public.lbdn_jobs (
    pk integer NOT NULL,
    id character varying(40) NOT NULL,
    tenant character varying(100) NOT NULL,
    kind character varying(20) NOT NULL,
    status character varying(20) NOT NULL,
    spec json NOT NULL,
    params json,
    model_id character varying(40),
    idempotency_key character varying(200),
    request_hash character varying(64),
    created_at timestamp with time zone NOT NULL,
    enqueued_at timestamp with time zone,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone NOT NULL,
    progress json,
    latest_metrics json,
    result json,
    resumed_from json,
    error text,
    cancel_requested boolean NOT NULL,
    lease_owner character varying(200),
    lease_expires_at timestamp with time zone,
    attempt integer NOT NULL,
    event_seq integer NOT NULL
);

CREATE SEQUENCE public.lbdn_jobs_pk_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.lbdn_jobs_pk_seq OWNED BY public.lbdn_jobs.pk;

CREATE TABLE public.lbdn_sweep_jobs (
    sweep_id character varying(40) NOT NULL,
    job_id character varying(40) NOT NULL,
    role character varying(20) NOT NULL,
    "position" integer NOT NULL,
    point json NOT NULL,
    train_job_id character varying(40)
);

CREATE TABLE public.lbdn_sweeps (
    pk integer NOT NULL,
    id character varying(40) NOT NULL,
    tenant character varying(100) NOT NULL,
    name character varying(200) NOT NULL,
    preset character varying(100),
    request json NOT NULL,
    evaluate json,
    created_at timestamp with time zone NOT NULL
);

CREATE SEQUENCE public.lbdn_sweeps_pk_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.lbdn_sweeps_pk_seq OWNED BY public.lbdn_sweeps.pk;

ALTER TABLE ONLY public.lbdn_job_events ALTER COLUMN id SET DEFAULT nextval('public.lbdn_job_events_id_seq'::regclass);

ALTER TABLE ONLY public.lbdn_jobs ALTER COLUMN pk SET DEFAULT nextval('public.lbdn_jobs_pk_seq'::regclass);

ALTER TABLE ONLY public.lbdn_sweeps ALTER COLUMN pk SET DEFAULT nextval('public.lbdn_sweeps_pk_seq'::regclass);

INSERT INTO public.lbdn_job_events VALUES (1, 'job_80116f591979e4f2396c', 1, 'state', '{"status": "queued"}', '2026-11-26 09:09:41.294837+00');
INSERT INTO public.lbdn_job_events VALUES (2, 'job_80116f591979e4f2396c', 2, 'state', '{"status": "running", "attempt": 1, "worker": "w1"}', '2026-11-26 09:09:41.312234+00');
INSERT INTO public.lbdn_job_events VALUES (3, 'job_80116f591979e4f2396c', 3, 'metrics', '{"epoch": 1, "train_loss": 0.5}', '2026-11-26 09:09:41.318322+00');
INSERT INTO public.lbdn_job_events VALUES (4, 'job_80116f591979e4f2396c', 4, 'state', '{"status": "succeeded"}', '2026-11-26 09:09:41.321367+00');

INSERT INTO public.lbdn_job_metrics VALUES ('job_80116f591979e4f2396c', 1, '{"epoch": 1, "train_loss": 0.5}');

INSERT INTO public.lbdn_jobs VALUES (1, 'job_80116f591979e4f2396c', 'acme', 'train', 'succeeded', '{"model": "Toy", "dataset": "square_wave", "epochs": 2}', 'null', NULL, 'k1', 'h1', '2025-01-02 03:04:05+00', '2025-01-02 03:04:05+00', '2025-01-02 03:04:05+00', '2025-01-02 03:04:05+00', '2025-01-02 03:04:05+00', NULL, '{"epoch": 1, "train_loss": 0.5}', '{"test_acc": 90.0}', NULL, NULL, false, NULL, NULL, 1, 4);

SELECT pg_catalog.setval('public.lbdn_job_events_id_seq', 4, true);

SELECT pg_catalog.setval('public.lbdn_jobs_pk_seq', 1, true);

SELECT pg_catalog.setval('public.lbdn_sweeps_pk_seq', 1, false);

ALTER TABLE ONLY public.lbdn_api_keys
    ADD CONSTRAINT lbdn_api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.lbdn_api_keys
    ADD CONSTRAINT lbdn_api_keys_secret_sha256_key UNIQUE (secret_sha256);

ALTER TABLE ONLY public.lbdn_job_events
    ADD CONSTRAINT lbdn_job_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.lbdn_job_metrics
    ADD CONSTRAINT lbdn_job_metrics_pkey PRIMARY KEY (job_id, epoch);

ALTER TABLE ONLY public.lbdn_jobs
    ADD CONSTRAINT lbdn_jobs_id_key UNIQUE (id);

ALTER TABLE ONLY public.lbdn_jobs
    ADD CONSTRAINT lbdn_jobs_pkey PRIMARY KEY (pk);

ALTER TABLE ONLY public.lbdn_sweep_jobs
    ADD CONSTRAINT lbdn_sweep_jobs_pkey PRIMARY KEY (sweep_id, job_id);

ALTER TABLE ONLY public.lbdn_sweeps
    ADD CONSTRAINT lbdn_sweeps_id_key UNIQUE (id);

ALTER TABLE ONLY public.lbdn_sweeps
    ADD CONSTRAINT lbdn_sweeps_pkey PRIMARY KEY (pk);

ALTER TABLE ONLY public.lbdn_job_events
    ADD CONSTRAINT uq_lbdn_job_events_seq UNIQUE (job_id, seq);

ALTER TABLE ONLY public.lbdn_jobs
    ADD CONSTRAINT uq_lbdn_jobs_idempotency UNIQUE (tenant, idempotency_key);

CREATE INDEX ix_lbdn_jobs_status ON public.lbdn_jobs USING btree (status);

CREATE INDEX ix_lbdn_jobs_tenant_pk ON public.lbdn_jobs USING btree (tenant, pk);

CREATE INDEX ix_lbdn_sweeps_tenant_pk ON public.lbdn_sweeps USING btree (tenant, pk);

ALTER TABLE ONLY public.lbdn_job_events
    ADD CONSTRAINT lbdn_job_events_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.lbdn_jobs(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.lbdn_job_metrics
    ADD CONSTRAINT lbdn_job_metrics_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.lbdn_jobs(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.lbdn_sweep_jobs
    ADD CONSTRAINT lbdn_sweep_jobs_sweep_id_fkey FOREIGN KEY (sweep_id) REFERENCES public.lbdn_sweeps(id) ON DELETE CASCADE;

