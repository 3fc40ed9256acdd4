"""EHR integration over HL7 FHIR R4: routing context in, conversations filed back into the chart, Consent and
AuditEvent exported. See docs/fhir.md."""
