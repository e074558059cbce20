"""Adapter `social_ads`: Meta Lead Ads and LinkedIn Lead Gen leads become `RawLead`s.

By provider: `meta`, `linkedin`, and what both share in `common`; `fetcher` reads
the lead objects from the providers' APIs, `service` runs the fetches, `backfill`
publishes an Ads Manager export.

A lead-ads webhook carries no answers, only a reference to a lead, so a lead
arrives in two steps:

1. The HTTP handler verifies the webhook (`verify_meta_subscription`,
   `verify_meta_signature`, `linkedin_challenge`, `verify_linkedin_signature`),
   turns the body into `LeadgenRef`s (`parse_meta_notification`,
   `parse_linkedin_notification`) and records each ref as JSON keyed by
   `ref.lead_ref` before it answers, so the provider is acknowledged at once
   and no lead depends on the fetch succeeding during the request.
2. `SocialFetcher.fetch(ref)` reads the lead from the Graph API or LinkedIn's
   REST API and returns the envelope for `leads.raw`. `meta_lead` and
   `linkedin_lead` are the pure conversions it uses.

Backfills read Ads Manager's "Download leads" files (`read_meta_export`,
`lead_from_export_row`, `meta_export_leads`).

Idempotency: a lead's event id is uuid5 of (provider, provider lead id), the
same for a webhook, its redelivery and a backfill row, so downstream sees one
event per lead however often it arrives.

Field names stay as the provider sent them (`full_name`, `FIRST_NAME`); the
normalize step decides what they mean. Every refusal is a `BadRecordError`
(dead-letter on `dlq.social_ads`, then move on) whose reason names the problem:
`bad_signature`, `not_configured`, `invalid_json`, `invalid_fields`,
`no_leads`, `unsupported_event`, `lead_deleted`, `invalid_response`,
`lead_not_found`, `fetch_refused`, `fetch_failed`, `invalid_row`,
`invalid_encoding`, `invalid_file`, `no_header`. A missing access token is a
`ConfigurationError`: the worker stops instead of dead-lettering every lead.
"""
