"""Peewee models of the metadata index: Study, Series, Instance, the change feed, the audit trail,
operations and extended query tags.

Patient attributes live on Study (as in the reference server: no patient level).
Study and Series columns hold the searchable attributes of their *latest* stored
instance ("latest wins" when instances disagree) plus counters maintained in the
same transaction as every write, so QIDO is one indexed query and never opens a blob.
Instance rows carry the instance's frame offsets and, in InstanceMetadata, its DICOM
JSON, so `/metadata` and frame retrieval need no parse of the stored file; SeriesMetadataCache
keeps each series' `/metadata` compressed for gzip-accepting clients.
"""
from __future__ import annotations

import peewee as pw

database_proxy = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Partition(BaseModel):
    """A data partition (partitions.py): created by the first STOW that names it, never
    renamed or deleted. Key 1, Microsoft.Default, always exists (schema 12)."""

    #: Assigned as MAX + 1 under the write lock (a serial column would have to be told about
    #: the default partition's explicit key on PostgreSQL).
    key = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=64, unique=True)
    created = pw.DateTimeField()


class Study(BaseModel):
    id = pw.AutoField()
    #: The data partition (Partition.key); UIDs are unique within one (the reference's rule).
    #: The unique indexes are (UID, partition): UID first, so that a QIDO without a UID never
    #: mistakes the partition key (one value on most servers) for a selective index.
    partition_key = pw.IntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    study_instance_uid = pw.CharField(max_length=64)
    patient_name = pw.TextField(null=True)
    #: Upper-cased, accent-stripped PatientName for case/accent-insensitive matching.
    patient_name_key = pw.TextField(null=True, index=True)
    patient_id = pw.TextField(null=True, index=True)
    patient_birth_date = pw.CharField(max_length=8, null=True)
    patient_sex = pw.CharField(max_length=16, null=True)
    study_date = pw.CharField(max_length=8, null=True, index=True)
    #: StudyTime normalised to HHMMSS.ffffff so that text order is time order.
    study_time = pw.CharField(max_length=13, null=True)
    accession_number = pw.TextField(null=True, index=True)
    referring_physician_name_key = pw.TextField(null=True)
    #: " WORD WORD ..." forms of the names, for word-prefix (fuzzy) matching.
    patient_name_words = pw.TextField(null=True)
    referring_physician_name_words = pw.TextField(null=True)
    study_id = pw.TextField(null=True)
    study_description = pw.TextField(null=True)
    #: Distinct modalities of the study's series, backslash-joined (DICOM multi-value).
    modalities_in_study = pw.TextField(null=True)
    #: Distinct SOP Class UIDs of the study's instances, backslash-joined.
    sop_classes_in_study = pw.TextField(null=True)
    number_of_series = pw.IntegerField(default=0)
    number_of_instances = pw.IntegerField(default=0)
    #: Instance whose metadata supplies this study's attributes in QIDO answers.
    latest_instance_id = pw.IntegerField(null=True)

    class Meta:
        indexes = ((("study_instance_uid", "partition_key"), True),)


class Series(BaseModel):
    id = pw.AutoField()
    study = pw.ForeignKeyField(Study, backref="series", on_delete="CASCADE")
    partition_key = pw.IntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    series_instance_uid = pw.CharField(max_length=64)
    modality = pw.CharField(max_length=16, null=True, index=True)
    series_number = pw.IntegerField(null=True)
    series_description = pw.TextField(null=True)
    performed_procedure_step_start_date = pw.CharField(max_length=8, null=True)
    performed_procedure_step_start_time = pw.CharField(max_length=13, null=True)
    manufacturer_model_name = pw.TextField(null=True)
    number_of_instances = pw.IntegerField(default=0)
    latest_instance_id = pw.IntegerField(null=True)

    class Meta:
        indexes = ((("series_instance_uid", "partition_key"), True),)


class Instance(BaseModel):
    id = pw.AutoField()
    study = pw.ForeignKeyField(Study, backref="instances", on_delete="CASCADE")
    series = pw.ForeignKeyField(Series, backref="instances", on_delete="CASCADE")
    partition_key = pw.IntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    sop_instance_uid = pw.CharField(max_length=64)
    sop_class_uid = pw.CharField(max_length=64, index=True)
    instance_number = pw.IntegerField(null=True)
    transfer_syntax_uid = pw.CharField(max_length=64)
    rows = pw.IntegerField(null=True)
    columns = pw.IntegerField(null=True)
    bits_allocated = pw.IntegerField(null=True)
    number_of_frames = pw.IntegerField(null=True)
    blob_key = pw.TextField()
    size = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64, null=True)
    #: JSON frame map (see frames.py); NULL when frames cannot be located by offset.
    frames = pw.TextField(null=True)
    #: JSON {bulk data path: [offset, length]} for the BulkDataURIs in `metadata`.
    bulkdata = pw.TextField(null=True)
    #: Sequence of the change-feed entry that created this version of the instance.
    #: Not indexed: it is read through the instance's row (by series, by UID), never
    #: searched for, and each STOW would pay for the index (schema 10 dropped it).
    watermark = pw.BigIntegerField()
    #: The blob the instance was first stored as, once a bulk update wrote a new version of it
    #: (the reference's "original version", `msdicom-request-original`); NULL if never updated.
    #: Its size and SHA-256 let `verify` check it as it checks the current blob.
    original_blob_key = pw.TextField(null=True)
    original_size = pw.BigIntegerField(null=True)
    original_sha256 = pw.CharField(max_length=64, null=True)

    class Meta:
        indexes = ((("sop_instance_uid", "partition_key"), True),)


class InstanceMetadata(BaseModel):
    """The instance's DICOM JSON (PS3.18 Annex F), large binary values as BulkDataURIs.

    Kept apart from Instance so that the rows QIDO scans, sorts and pages through stay
    a few hundred bytes long; the JSON (kilobytes) is read only for the rows returned.
    """

    instance = pw.ForeignKeyField(Instance, primary_key=True, backref="meta", on_delete="CASCADE")
    metadata = pw.TextField()
    #: The attributes QIDO returns by default, pre-serialised (see query.qido_members).
    qido = pw.TextField(null=True)
    #: The original version's DICOM JSON once a bulk update changed the instance (NULL before):
    #: `/metadata` with `msdicom-request-original` serves it without opening the original blob.
    original_metadata = pw.TextField(null=True)


class SeriesMetadataCache(BaseModel):
    """A series' `/metadata` text, deflated once and served to every gzip-accepting client.

    Compressing a large study's DICOM JSON costs more CPU than everything else a
    `/metadata` request does, so it is done once per version of a series (`version`,
    '<newest watermark>-<count>' as in reads.py) and base URL (its BulkDataURIs are
    absolute). `deflate` is a raw deflate stream ending in a sync flush: streams of several
    series join into one gzip member (metadata_stream.py). An entry for an older version is
    never served; a series' entries go with it (ON DELETE CASCADE).
    """

    id = pw.AutoField()
    series = pw.ForeignKeyField(Series, on_delete="CASCADE")
    base_url = pw.TextField()
    version = pw.CharField(max_length=64)
    #: CRC-32 and byte length of the text deflated, for the gzip trailer.
    crc32 = pw.BigIntegerField()
    length = pw.BigIntegerField()
    deflate = pw.BlobField()

    class Meta:
        indexes = ((("series", "base_url"), True),)


class RequestAttribute(BaseModel):
    """One item of a series' Request Attributes Sequence (0040,0275), for sequence matching."""

    id = pw.AutoField()
    series = pw.ForeignKeyField(Series, backref="request_attributes", on_delete="CASCADE")
    scheduled_procedure_step_id = pw.TextField(null=True, index=True)
    requested_procedure_id = pw.TextField(null=True, index=True)


class Change(BaseModel):
    """One change-feed entry; `state` is derived from Instance.watermark when read."""

    #: Assigned as MAX + 1 under the write lock: unique and gap-free in commit order.
    sequence = pw.BigIntegerField(primary_key=True)
    timestamp = pw.DateTimeField(index=True)
    action = pw.CharField(max_length=8)
    #: The partition of the instance: the feed is global, each entry names its partition.
    partition_key = pw.IntegerField(default=1, constraints=[pw.SQL("DEFAULT 1")])
    study_instance_uid = pw.CharField(max_length=64)
    series_instance_uid = pw.CharField(max_length=64)
    #: Not indexed: the feed is read by sequence or time and joined to instances by their
    #: UID index; an index here cost each STOW a page write at a random place (schema 10 dropped it).
    sop_instance_uid = pw.CharField(max_length=64)


class AuditEvent(BaseModel):
    """One audit record (audit.py), kept for the retention period and served as a FHIR AuditEvent.

    Facts only (who, from where, which route and UIDs, the outcome); the FHIR resource
    is built when read, so a row stays ~200 bytes. Newest first is the only order read.
    """

    id = pw.BigAutoField()  # ~1,000 requests/s would use up a 32-bit id in weeks
    recorded = pw.DateTimeField(index=True)
    request_id = pw.CharField(max_length=32)
    subject = pw.TextField()
    client = pw.TextField()
    method = pw.TextField()
    route = pw.TextField()
    action = pw.CharField(max_length=32, null=True)
    study = pw.CharField(max_length=64, null=True)
    series = pw.CharField(max_length=64, null=True)
    instance = pw.CharField(max_length=64, null=True)
    status = pw.IntegerField()
    bytes = pw.BigIntegerField(null=True)
    #: The data partition of a partitioned request (schema 12).
    partition = pw.CharField(max_length=64, null=True)

    class Meta:
        indexes = ((("subject", "id"), False), (("study", "id"), False))


class Operation(BaseModel):
    """A long-running job (re-index of extended query tags, ...) and its progress, at /operations/{id}.

    Any process of any host may run it: one claims it by taking its lease (owner and expiry,
    under the write lock), renews the lease with each checkpoint and resumes from `checkpoint`
    when a previous runner's lease ran out (it crashed or was killed).
    """

    id = pw.CharField(max_length=32, primary_key=True)  # a UUID, 32 hex digits (the reference's format)
    type = pw.CharField(max_length=32)
    status = pw.CharField(max_length=16, index=True)
    created = pw.DateTimeField()
    last_updated = pw.DateTimeField()
    started = pw.DateTimeField(null=True)
    ended = pw.DateTimeField(null=True)
    percent_complete = pw.IntegerField(default=0)
    #: JSON: what the operation was asked to do, and its resources (relative paths).
    payload = pw.TextField()
    #: JSON: where to resume (the handler's own state); NULL before the first checkpoint.
    checkpoint = pw.TextField(null=True)
    #: JSON list of error messages (a failed operation says why).
    errors = pw.TextField(null=True)
    lease_owner = pw.CharField(max_length=128, null=True)
    lease_expires = pw.DateTimeField(null=True)
    #: How many runners have claimed it (a crash loop shows here, and ends in failure).
    attempts = pw.IntegerField(default=0)


class ExtendedQueryTag(BaseModel):
    """An attribute made searchable at a level (the reference's extended query tags)."""

    id = pw.AutoField()
    #: GGGGEEEE, upper case; for a private tag the element as the data carries it (GGGGxxEE).
    path = pw.CharField(max_length=8)
    vr = pw.CharField(max_length=2)
    private_creator = pw.CharField(max_length=64, null=True)
    level = pw.CharField(max_length=8)  # Study, Series, Instance
    status = pw.CharField(max_length=8)  # Adding, Ready
    query_status = pw.CharField(max_length=8)  # Enabled, Disabled
    operation_id = pw.CharField(max_length=32, null=True)
    created = pw.DateTimeField()

    class Meta:
        indexes = ((("path",), True),)


class ExtendedQueryTagValue(BaseModel):
    """One instance's value of an extended query tag (its first value, normalised for matching).

    Kept per instance: a study- or series-level tag matches on the value of the study's or
    series' latest instance (Study/Series.latest_instance_id), as the core columns do, so
    a delete that changes the latest instance needs no re-derivation here.
    """

    tag = pw.ForeignKeyField(ExtendedQueryTag, on_delete="CASCADE")
    instance = pw.ForeignKeyField(Instance, on_delete="CASCADE")
    text_value = pw.TextField(null=True)
    number_value = pw.DoubleField(null=True)

    class Meta:
        primary_key = pw.CompositeKey("tag", "instance")
        indexes = ((("tag", "text_value"), False), (("tag", "number_value"), False))


class ExtendedQueryTagError(BaseModel):
    """A value of an extended query tag that could not be indexed, and why."""

    id = pw.AutoField()
    tag = pw.ForeignKeyField(ExtendedQueryTag, on_delete="CASCADE")
    instance = pw.ForeignKeyField(Instance, on_delete="CASCADE")
    study_instance_uid = pw.CharField(max_length=64)
    series_instance_uid = pw.CharField(max_length=64)
    sop_instance_uid = pw.CharField(max_length=64)
    created = pw.DateTimeField()
    message = pw.TextField()

    class Meta:
        indexes = ((("tag", "instance"), True),)


class Webhook(BaseModel):
    """A webhook subscription (/webhooks, webhooks.py): where events of some types are POSTed, signed
    with its secret. Deleting it deletes its deliveries."""

    id = pw.CharField(max_length=32, primary_key=True)  # a UUID, 32 hex digits
    url = pw.TextField()
    #: JSON list of event types (events.TYPES).
    events = pw.TextField()
    #: The Standard Webhooks secret, "whsec_<base64 key>": kept as it is, the HMAC needs it.
    secret = pw.TextField()
    description = pw.TextField(null=True)
    #: Only events of this data partition (its name); NULL: every partition.
    partition = pw.CharField(max_length=64, null=True)
    active = pw.BooleanField(default=True)
    created = pw.DateTimeField()
    updated = pw.DateTimeField()


class WebhookEvent(BaseModel):
    """The outbox: one row per event, written in the transaction of what it reports (and only
    while a subscription wants its type); fanned out to deliveries by the delivery thread."""

    #: Assigned in commit order (writers hold the write lock): the fan-out's cursor follows it.
    id = pw.AutoField()
    event_id = pw.CharField(max_length=36)  # a UUID: the receivers' de-duplication key
    type = pw.CharField(max_length=32)
    time = pw.DateTimeField(index=True)
    partition = pw.CharField(max_length=64)
    #: JSON: the envelope's `data` (UIDs ...); retrieve URLs are added when it is sent.
    data = pw.TextField()


class WebhookDelivery(BaseModel):
    """One event for one subscription: claimed with a lease under the write lock, POSTed, and
    retried with back-off until a 2xx (delivered) or the attempts or age run out (failed)."""

    id = pw.AutoField()
    webhook = pw.ForeignKeyField(Webhook, on_delete="CASCADE")
    event = pw.ForeignKeyField(WebhookEvent, on_delete="CASCADE")
    status = pw.CharField(max_length=16)  # pending, delivered, failed
    attempts = pw.IntegerField(default=0)
    created = pw.DateTimeField()
    next_attempt = pw.DateTimeField(null=True)
    last_attempt = pw.DateTimeField(null=True)
    #: The receiver's HTTP status of the last attempt, or why there was none (last_error).
    last_status = pw.IntegerField(null=True)
    last_error = pw.TextField(null=True)
    lease_owner = pw.CharField(max_length=128, null=True)
    lease_expires = pw.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("webhook", "event"), True),
            (("status", "next_attempt"), False),
        )


class WebhookCursor(BaseModel):
    """Where a scan of the delivery thread resumes: `fanout` (the last WebhookEvent id fanned
    out) and `stable` (the last change-feed sequence the stable scan has seen)."""

    name = pw.CharField(max_length=16, primary_key=True)
    position = pw.BigIntegerField()


class WebhookStable(BaseModel):
    """A series or study that changed since its last stable event: reported once its newest
    change is DICOMWEB_STABLE_SECONDS old, then removed (a later STOW brings it back)."""

    id = pw.AutoField()
    level = pw.CharField(max_length=8)  # series, study
    partition_key = pw.IntegerField()
    study_instance_uid = pw.CharField(max_length=64)
    #: The series UID of a series row; '' for a study row.
    series_instance_uid = pw.CharField(max_length=64)
    last_change = pw.DateTimeField(index=True)

    class Meta:
        indexes = ((("partition_key", "study_instance_uid", "series_instance_uid", "level"), True),)


#: Schema 13's tables (webhooks).
WEBHOOK_MODELS = (Webhook, WebhookEvent, WebhookDelivery, WebhookCursor, WebhookStable)


class Workitem(BaseModel):
    """A UPS-RS workitem (workitems.py): its DICOM JSON and the columns its search matches on.

    `version` grows with every write: an update names the version it read, and a write that
    finds another one answers 409 (optimistic concurrency, as the reference's watermark).
    """

    id = pw.AutoField()
    partition_key = pw.IntegerField(default=1)
    sop_instance_uid = pw.CharField(max_length=64)
    procedure_step_state = pw.CharField(max_length=16)
    transaction_uid = pw.CharField(max_length=64, null=True)
    version = pw.IntegerField(default=1)
    #: Upper-cased for wildcard matching; `patient_name_words` for fuzzymatching (" WORD WORD ").
    patient_name = pw.CharField(max_length=324, null=True)
    patient_name_words = pw.CharField(max_length=330, null=True)
    patient_id = pw.CharField(max_length=64, null=True)
    accession_number = pw.CharField(max_length=16, null=True)
    requested_procedure_id = pw.CharField(max_length=16, null=True)
    #: ScheduledProcedureStepStartDateTime as YYYYMMDDHHMMSS (range matching compares text).
    scheduled_start = pw.CharField(max_length=14, null=True)
    station_name_code = pw.CharField(max_length=64, null=True)
    station_class_code = pw.CharField(max_length=64, null=True)
    station_location_code = pw.CharField(max_length=64, null=True)
    workitem_code = pw.CharField(max_length=64, null=True)
    study_instance_uid = pw.CharField(max_length=64, null=True)
    dataset = pw.TextField()
    created = pw.DateTimeField()
    updated = pw.DateTimeField()

    class Meta:
        indexes = ((("sop_instance_uid", "partition_key"), True),)


class UpsSubscription(BaseModel):
    """An AE title's subscription to UPS events (PS3.4 CC.2.3): to one workitem (`workitem_uid`),
    or global (`workitem_uid` NULL, `filter_json` the search parameters of a filtered one).
    A global subscription also subscribes the AE to each workitem it matches as that is created."""

    id = pw.AutoField()
    partition_key = pw.IntegerField(default=1)
    ae_title = pw.CharField(max_length=16)
    workitem_uid = pw.CharField(max_length=64, null=True)
    #: A filtered global subscription's matching keys, {attribute: value} as JSON.
    filter_json = pw.TextField(null=True)
    deletion_lock = pw.BooleanField(default=False)
    created = pw.DateTimeField()

    class Meta:
        indexes = ((("workitem_uid", "partition_key", "ae_title"), False), (("ae_title",), False))


class UpsEvent(BaseModel):
    """An event report for one AE title, written in the transaction of the change it reports;
    every process holding event channels tails the table by sequence (ups_events.py)."""

    #: Assigned as MAX + 1 under the write lock: increasing in commit order.
    sequence = pw.BigIntegerField(primary_key=True)
    created = pw.DateTimeField()
    ae_title = pw.CharField(max_length=16)
    payload = pw.TextField()


#: Schema 14's tables (UPS-RS).
UPS_MODELS = (Workitem, UpsSubscription, UpsEvent)

MODELS = (
    Partition, Study, Series, Instance, InstanceMetadata, SeriesMetadataCache, RequestAttribute, Change, AuditEvent,
    Operation, ExtendedQueryTag, ExtendedQueryTagValue, ExtendedQueryTagError, *WEBHOOK_MODELS, *UPS_MODELS,
)


class SchemaInfo(BaseModel):
    """The schema version this database has been migrated to."""

    version = pw.IntegerField()
