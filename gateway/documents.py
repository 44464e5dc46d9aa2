"""/v1/documents: ingest research sources (JSON, or a multipart file upload), read, list and search them."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.params import FromPath, QueryParameter

from bus import subjects
from gateway.auth import Tenant
from gateway.errors import ApiError
from gateway.state import Stored, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.fields import DocumentType
from schemas.research import (
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
    async def ingest(self, request: Request[Any, Any, Any], state: State, tenant: Tenant) -> Response[Any]:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return Response(stored.body, status_code=stored.status, media_type="application/json")
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
        view: DocumentView = await gw.ask(RESEARCH, "ingest", cmd, DocumentView, gw.trace(tenant, request))
        body = full(view.document)
        body.pop("content")
        body["characters"] = len(view.document.content)
        encoded = msgspec.json.encode(body)
        await gw.remember(digest, Stored(status=201, body=encoded))
        return Response(encoded, status_code=201, media_type="application/json")

    @get("/", summary="List documents")
    async def list_documents(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any]:
        gw = gateway_of(state)
        service = subjects.service(RESEARCH, "list_documents")
        listed: DocumentList = await gw.bus.request(
            service, ListDocuments(limit=limit, after=after), DocumentList, trace=gw.trace(tenant, request)
        )
        documents = [{k: v for k, v in full(d).items() if k != "content"} for d in listed.documents]
        return Response(
            full_json({"documents": documents, "next_after": listed.next_after}), media_type="application/json"
        )

    @get("/search", summary="Full-text search over the documents, best first")
    async def search(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        q: Annotated[str, QueryParameter(min_length=1, max_length=1_000)],
        limit: Annotated[int, QueryParameter(ge=1, le=50)] = 10,
    ) -> Response[Any]:
        gw = gateway_of(state)
        service = subjects.service(RESEARCH, "search")
        found: DocumentHits = await gw.bus.request(
            service, SearchDocuments(query=q, limit=limit), DocumentHits, trace=gw.trace(tenant, request)
        )
        return Response(full_json({"hits": found.hits}), media_type="application/json")

    @get("/{document_id:str}", summary="A document and its text")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, document_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        service = subjects.service(RESEARCH, "get_document")
        view: DocumentView = await gw.bus.request(
            service, GetDocument(document_id=ident(document_id)), DocumentView, trace=gw.trace(tenant, request)
        )
        return Response(full_json(view.document), media_type="application/json")
