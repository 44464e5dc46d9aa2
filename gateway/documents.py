"""/v1/documents: ingest research sources (JSON, or a multipart file upload), read, list and search them."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath, QueryParameter

from bus import subjects
from gateway.answers import DocumentEntry, DocumentPage, DocumentSearch, IngestedDocument
from gateway.caller import Caller
from gateway.errors import ApiError
from gateway.state import Stored, ident, stored_response
from gateway.views import full_json
from schemas.errors import ErrorCode
from schemas.fields import DocumentType
from schemas.research import (
    Document,
    DocumentHits,
    DocumentList,
    DocumentView,
    GetDocument,
    IngestDocument,
    ListDocuments,
    SearchDocuments,
)

__all__ = ["DocumentController"]

RESEARCH = subjects.ActorName.RESEARCH
PDF = "application/pdf"
TYPES_BY_SUFFIX = {".md": "text/markdown", ".markdown": "text/markdown", ".html": "text/html", ".htm": "text/html"}
SUPPORTED = "text/plain, text/markdown, text/html or application/pdf"
MAX_CONTENT_BYTES = 900_000  # under NATS's default 1 MB max_payload, with room for the rest of the message


class NewDocument(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    content: Annotated[str, msgspec.Meta(min_length=1)]
    content_type: DocumentType = "text/plain"


def _document(**fields: str) -> NewDocument:
    """An uploaded file as a NewDocument, checked as a JSON body is (the title's length, the type)."""
    try:
        return msgspec.convert(fields, NewDocument)
    except msgspec.ValidationError as e:
        raise _refused(e) from None


def _refused(error: msgspec.ValidationError) -> ApiError:
    if str(error).endswith("`$.content_type`"):
        return ApiError(ErrorCode.INVALID, f"the content type is not supported: send {SUPPORTED}")
    return ApiError(ErrorCode.INVALID, str(error))


async def _from_request(request: Request[Any, Any, Any]) -> NewDocument:
    """The document in a JSON body, or in a multipart upload (`file`, and optionally `title`).

    A PDF travels to the research actor base64-encoded as `application/pdf`, because bus messages carry text.
    """
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(ErrorCode.INVALID, "a multipart upload needs a `file` part")
        raw = await upload.read()
        name = upload.filename or "document"
        suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        title = str(form.get("title") or name)
        if suffix == ".pdf" or declared == PDF or raw.startswith(b"%PDF-"):
            return _document(title=title, content=base64.b64encode(raw).decode(), content_type=PDF)
        try:
            content = raw.decode()
        except UnicodeDecodeError:
            raise ApiError(ErrorCode.INVALID, f"the file is neither UTF-8 text nor a PDF: send {SUPPORTED}") from None
        content_type = TYPES_BY_SUFFIX.get(suffix) or (upload.content_type or "text/plain")
        return _document(title=title, content=content, content_type=content_type)
    try:
        return msgspec.json.decode(await request.body(), type=NewDocument)
    except msgspec.ValidationError as e:
        raise _refused(e) from None
    except msgspec.DecodeError:
        raise ApiError(ErrorCode.MALFORMED, "the body is not JSON") from None


def _entry(document: Document) -> DocumentEntry:
    return DocumentEntry(
        id=document.id,
        tenant=document.tenant,
        title=document.title,
        content_type=document.content_type,
        created_at=document.created_at,
    )


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ["documents"]

    @post(
        "/",
        status_code=201,
        summary=(
            "Ingest a document: a file upload (text, Markdown, HTML or PDF), or JSON {title, content, content_type}"
            " (content_type application/pdf takes the PDF's bytes base64-encoded as content)"
        ),
    )
    async def ingest(self, request: Request[Any, Any, Any], caller: Caller) -> Response[IngestedDocument]:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored)
        doc = await _from_request(request)
        if (size := len(doc.content.encode())) > MAX_CONTENT_BYTES:
            limit = f"over the {MAX_CONTENT_BYTES}-byte limit of a bus message"
            if doc.content_type.startswith(PDF):
                raise ApiError(
                    ErrorCode.TOO_LARGE, f"the PDF is {size} bytes base64-encoded, {limit}: PDFs up to about 675 KB fit"
                )
            raise ApiError(ErrorCode.TOO_LARGE, f"the document is {size} bytes, {limit}")
        cmd = IngestDocument(
            document_id=gw.make_id(digest, "document"),
            title=doc.title,
            content=doc.content,
            content_type=doc.content_type,
        )
        document = (await caller.ask(RESEARCH, "ingest", cmd, DocumentView)).document
        entry = msgspec.structs.asdict(_entry(document))
        stored = Stored(status=201, body=full_json(IngestedDocument(**entry, characters=len(document.content))))
        await gw.remember(digest, stored)
        return stored_response(stored)

    @get("/", summary="List documents")
    async def list_documents(
        self,
        caller: Caller,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> DocumentPage:
        listed = await caller.ask(RESEARCH, "list_documents", ListDocuments(limit=limit, after=after), DocumentList)
        return DocumentPage(documents=[_entry(d) for d in listed.documents], next_after=listed.next_after)

    @get("/search", summary="Full-text search over the documents, best first")
    async def search(
        self,
        caller: Caller,
        q: Annotated[str, QueryParameter(min_length=1, max_length=1_000)],
        limit: Annotated[int, QueryParameter(ge=1, le=50)] = 10,
    ) -> DocumentSearch:
        found = await caller.ask(RESEARCH, "search", SearchDocuments(query=q, limit=limit), DocumentHits)
        return DocumentSearch(hits=found.hits)

    @get("/{document_id:str}", summary="A document and its text")
    async def read(self, caller: Caller, document_id: FromPath[str]) -> Document:
        query = GetDocument(document_id=ident(document_id))
        return (await caller.ask(RESEARCH, "get_document", query, DocumentView)).document
