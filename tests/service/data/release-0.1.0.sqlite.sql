-- A job store made by release 0.1.0 (metadata.create_all, SQLite): one succeeded job with an event
-- history and a metrics row. Generated with sqlite3 .dump; loaded by tests/service/test_migrations.py.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE lbdn_jobs (
	pk INTEGER NOT NULL, 
	id VARCHAR(40) NOT NULL, 
	tenant VARCHAR(100) NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	spec JSON NOT NULL, 
	params JSON, 
	model_id VARCHAR(40), 
	idempotency_key VARCHAR(200), 
	request_hash VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	enqueued_at DATETIME, 
	started_at DATETIME, 
	finished_at DATETIME, 
	updated_at DATETIME NOT NULL, 
	progress JSON, 
	latest_metrics JSON, 
	result JSON, 
	resumed_from JSON, 
	error TEXT, 
	cancel_requested BOOLEAN NOT NULL, 
	lease_owner VARCHAR(200), 
	lease_expires_at DATETIME, 
	attempt INTEGER NOT NULL, 
	event_seq INTEGER NOT NULL, 
	PRIMARY KEY (pk), 
	CONSTRAINT uq_lbdn_jobs_idempotency UNIQUE (tenant, idempotency_key), 
	UNIQUE (id)
);
INSERT INTO lbdn_jobs VALUES(1,'job_3557fccc19203d7623cb','acme','train','succeeded','{"model": "Toy", "dataset": "square_wave", "epochs": 2}','null',NULL,'k1','h1','2025-01-02 03:04:05.000000','2025-01-02 03:04:05.000000','2025-01-02 03:04:05.000000','2025-01-02 03:04:05.000000','2025-01-02 03:04:05.000000',NULL,'{"epoch": 1, "train_loss": 0.5}','{"test_acc": 90.0}',NULL,NULL,0,NULL,NULL,1,4);
CREATE TABLE lbdn_api_keys (
	id VARCHAR(20) NOT NULL, 
	tenant VARCHAR(100) NOT NULL, 
	name VARCHAR(200), 
	secret_sha256 VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (secret_sha256)
);
CREATE TABLE lbdn_sweeps (
	pk INTEGER NOT NULL, 
	id VARCHAR(40) NOT NULL, 
	tenant VARCHAR(100) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	preset VARCHAR(100), 
	request JSON NOT NULL, 
	evaluate JSON, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (pk), 
	UNIQUE (id)
);
CREATE TABLE lbdn_job_events (
	id INTEGER NOT NULL, 
	job_id VARCHAR(40) NOT NULL, 
	seq INTEGER NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	data JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_lbdn_job_events_seq UNIQUE (job_id, seq), 
	FOREIGN KEY(job_id) REFERENCES lbdn_jobs (id) ON DELETE CASCADE
);
INSERT INTO lbdn_job_events VALUES(1,'job_3557fccc19203d7623cb',1,'state','{"status": "queued"}','2026-11-26 09:09:37.011243');
INSERT INTO lbdn_job_events VALUES(2,'job_3557fccc19203d7623cb',2,'state','{"status": "running", "attempt": 1, "worker": "w1"}','2026-11-26 09:09:37.017794');
INSERT INTO lbdn_job_events VALUES(3,'job_3557fccc19203d7623cb',3,'metrics','{"epoch": 1, "train_loss": 0.5}','2026-11-26 09:09:37.022107');
INSERT INTO lbdn_job_events VALUES(4,'job_3557fccc19203d7623cb',4,'state','{"status": "succeeded"}','2026-11-26 09:09:37.024487');
CREATE TABLE lbdn_job_metrics (
	job_id VARCHAR(40) NOT NULL, 
	epoch INTEGER NOT NULL, 
	data JSON NOT NULL, 
	PRIMARY KEY (job_id, epoch), 
	FOREIGN KEY(job_id) REFERENCES lbdn_jobs (id) ON DELETE CASCADE
);
INSERT INTO lbdn_job_metrics VALUES('job_3557fccc19203d7623cb',1,'{"epoch": 1, "train_loss": 0.5}');
CREATE TABLE lbdn_sweep_jobs (
	sweep_id VARCHAR(40) NOT NULL, 
	job_id VARCHAR(40) NOT NULL, 
	role VARCHAR(20) NOT NULL, 
	position INTEGER NOT NULL, 
	point JSON NOT NULL, 
	train_job_id VARCHAR(40), 
	PRIMARY KEY (sweep_id, job_id), 
	FOREIGN KEY(sweep_id) REFERENCES lbdn_sweeps (id) ON DELETE CASCADE
);
CREATE INDEX ix_lbdn_jobs_tenant_pk ON lbdn_jobs (tenant, pk);
CREATE INDEX ix_lbdn_jobs_status ON lbdn_jobs (status);
CREATE INDEX ix_lbdn_sweeps_tenant_pk ON lbdn_sweeps (tenant, pk);
COMMIT;
