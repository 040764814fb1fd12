from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CapacityReply(_message.Message):
    __slots__ = ("max_streams", "active_streams", "decode_workers", "asr", "dropped_chunks", "skipped_partials")
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    ASR_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PARTIALS_FIELD_NUMBER: _ClassVar[int]
    max_streams: int
    active_streams: int
    decode_workers: int
    asr: str
    dropped_chunks: int
    skipped_partials: int
    def __init__(self, max_streams: _Optional[int] = ..., active_streams: _Optional[int] = ..., decode_workers: _Optional[int] = ..., asr: _Optional[str] = ..., dropped_chunks: _Optional[int] = ..., skipped_partials: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("pcm", "sample_rate", "seq")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate: int
    seq: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("start", "end_of_input", "barge_in", "session")
    START_FIELD_NUMBER: _ClassVar[int]
    END_OF_INPUT_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    start: Start
    end_of_input: bool
    barge_in: bool
    session: SessionUpdate
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., end_of_input: _Optional[bool] = ..., barge_in: _Optional[bool] = ..., session: _Optional[_Union[SessionUpdate, _Mapping]] = ...) -> None: ...

class SessionUpdate(_message.Message):
    __slots__ = ("silence_duration_ms", "instructions")
    SILENCE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    silence_duration_ms: int
    instructions: str
    def __init__(self, silence_duration_ms: _Optional[int] = ..., instructions: _Optional[str] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("call_id", "language", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    language: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, call_id: _Optional[str] = ..., language: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("audio", "control")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    audio: AudioChunk
    control: Control
    def __init__(self, audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "final", "turn")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    text: str
    final: bool
    turn: int
    def __init__(self, text: _Optional[str] = ..., final: _Optional[bool] = ..., turn: _Optional[int] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("text", "turn")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    text: str
    turn: int
    def __init__(self, text: _Optional[str] = ..., turn: _Optional[int] = ...) -> None: ...

class TurnTimings(_message.Message):
    __slots__ = ("turn", "speech_end_ms", "processing_ms", "asr_ms", "reply_ms", "tts_ms", "vad_ms", "asr_wait_ms")
    TURN_FIELD_NUMBER: _ClassVar[int]
    SPEECH_END_MS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    ASR_MS_FIELD_NUMBER: _ClassVar[int]
    REPLY_MS_FIELD_NUMBER: _ClassVar[int]
    TTS_MS_FIELD_NUMBER: _ClassVar[int]
    VAD_MS_FIELD_NUMBER: _ClassVar[int]
    ASR_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    turn: int
    speech_end_ms: float
    processing_ms: float
    asr_ms: float
    reply_ms: float
    tts_ms: float
    vad_ms: float
    asr_wait_ms: float
    def __init__(self, turn: _Optional[int] = ..., speech_end_ms: _Optional[float] = ..., processing_ms: _Optional[float] = ..., asr_ms: _Optional[float] = ..., reply_ms: _Optional[float] = ..., tts_ms: _Optional[float] = ..., vad_ms: _Optional[float] = ..., asr_wait_ms: _Optional[float] = ...) -> None: ...

class SpeechEvent(_message.Message):
    __slots__ = ("started", "turn", "audio_ms")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    started: bool
    turn: int
    audio_ms: float
    def __init__(self, started: _Optional[bool] = ..., turn: _Optional[int] = ..., audio_ms: _Optional[float] = ...) -> None: ...

class ModelError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("audio", "transcript", "reply", "timings", "error", "turn_end", "speech")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TURN_END_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    audio: AudioChunk
    transcript: Transcript
    reply: Reply
    timings: TurnTimings
    error: ModelError
    turn_end: int
    speech: SpeechEvent
    def __init__(self, audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ..., timings: _Optional[_Union[TurnTimings, _Mapping]] = ..., error: _Optional[_Union[ModelError, _Mapping]] = ..., turn_end: _Optional[int] = ..., speech: _Optional[_Union[SpeechEvent, _Mapping]] = ...) -> None: ...
