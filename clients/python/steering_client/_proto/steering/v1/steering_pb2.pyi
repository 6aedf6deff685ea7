from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SteeringMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEERING_MODE_UNSPECIFIED: _ClassVar[SteeringMode]
    ABLATE: _ClassVar[SteeringMode]
    ADD: _ClassVar[SteeringMode]
    CLAMP: _ClassVar[SteeringMode]

class SteeringPositions(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALL_POSITIONS: _ClassVar[SteeringPositions]
    PROMPT_POSITIONS: _ClassVar[SteeringPositions]
    LAST_PROMPT_POSITION: _ClassVar[SteeringPositions]
    GENERATED_POSITIONS: _ClassVar[SteeringPositions]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    MAX_TOKENS: _ClassVar[StopReason]
    EOS_TOKEN: _ClassVar[StopReason]
    STOP_SEQUENCE: _ClassVar[StopReason]
    CANCELLED: _ClassVar[StopReason]
    MONITOR_ALERT: _ClassVar[StopReason]
    ERROR: _ClassVar[StopReason]

class ConditionScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_SCORE: _ClassVar[ConditionScope]
    RUNNING_SCORE: _ClassVar[ConditionScope]

class AlertAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_ACTION_UNSPECIFIED: _ClassVar[AlertAction]
    RECORD: _ClassVar[AlertAction]
    STOP: _ClassVar[AlertAction]
    STEER: _ClassVar[AlertAction]

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_LAST_PROMPT: _ClassVar[Pooling]
    POOLING_RESPONSE_MEAN: _ClassVar[Pooling]
STEERING_MODE_UNSPECIFIED: SteeringMode
ABLATE: SteeringMode
ADD: SteeringMode
CLAMP: SteeringMode
ALL_POSITIONS: SteeringPositions
PROMPT_POSITIONS: SteeringPositions
LAST_PROMPT_POSITION: SteeringPositions
GENERATED_POSITIONS: SteeringPositions
STOP_REASON_UNSPECIFIED: StopReason
MAX_TOKENS: StopReason
EOS_TOKEN: StopReason
STOP_SEQUENCE: StopReason
CANCELLED: StopReason
MONITOR_ALERT: StopReason
ERROR: StopReason
PROMPT_SCORE: ConditionScope
RUNNING_SCORE: ConditionScope
ALERT_ACTION_UNSPECIFIED: AlertAction
RECORD: AlertAction
STOP: AlertAction
STEER: AlertAction
POOLING_UNSPECIFIED: Pooling
POOLING_LAST_PROMPT: Pooling
POOLING_RESPONSE_MEAN: Pooling

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class SteeringTerm(_message.Message):
    __slots__ = ("direction", "mode", "strength", "layers", "positions", "condition")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    direction: str
    mode: SteeringMode
    strength: float
    layers: _containers.RepeatedScalarFieldContainer[int]
    positions: SteeringPositions
    condition: SteeringCondition
    def __init__(self, direction: _Optional[str] = ..., mode: _Optional[_Union[SteeringMode, str]] = ..., strength: _Optional[float] = ..., layers: _Optional[_Iterable[int]] = ..., positions: _Optional[_Union[SteeringPositions, str]] = ..., condition: _Optional[_Union[SteeringCondition, _Mapping]] = ...) -> None: ...

class SteeringCondition(_message.Message):
    __slots__ = ("direction", "threshold", "scope")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    direction: str
    threshold: float
    scope: ConditionScope
    def __init__(self, direction: _Optional[str] = ..., threshold: _Optional[float] = ..., scope: _Optional[_Union[ConditionScope, str]] = ...) -> None: ...

class AlertRule(_message.Message):
    __slots__ = ("direction", "threshold", "scope", "action", "steering")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    direction: str
    threshold: float
    scope: ConditionScope
    action: AlertAction
    steering: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    def __init__(self, direction: _Optional[str] = ..., threshold: _Optional[float] = ..., scope: _Optional[_Union[ConditionScope, str]] = ..., action: _Optional[_Union[AlertAction, str]] = ..., steering: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("direction", "scope", "score", "threshold", "action", "token_index", "source")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    direction: str
    scope: ConditionScope
    score: float
    threshold: float
    action: AlertAction
    token_index: int
    source: str
    def __init__(self, direction: _Optional[str] = ..., scope: _Optional[_Union[ConditionScope, str]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., action: _Optional[_Union[AlertAction, str]] = ..., token_index: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class MonitorOptions(_message.Message):
    __slots__ = ("directions", "token_scores", "stop_threshold", "disabled")
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SCORES_FIELD_NUMBER: _ClassVar[int]
    STOP_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    directions: _containers.RepeatedScalarFieldContainer[str]
    token_scores: bool
    stop_threshold: float
    disabled: bool
    def __init__(self, directions: _Optional[_Iterable[str]] = ..., token_scores: _Optional[bool] = ..., stop_threshold: _Optional[float] = ..., disabled: _Optional[bool] = ...) -> None: ...

class DirectionScores(_message.Message):
    __slots__ = ("direction", "layer", "prompt_score", "response_score", "token_scores", "max_score", "calibrated", "post_intervention")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SCORE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SCORES_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    POST_INTERVENTION_FIELD_NUMBER: _ClassVar[int]
    direction: str
    layer: int
    prompt_score: float
    response_score: float
    token_scores: _containers.RepeatedScalarFieldContainer[float]
    max_score: float
    calibrated: bool
    post_intervention: bool
    def __init__(self, direction: _Optional[str] = ..., layer: _Optional[int] = ..., prompt_score: _Optional[float] = ..., response_score: _Optional[float] = ..., token_scores: _Optional[_Iterable[float]] = ..., max_score: _Optional[float] = ..., calibrated: _Optional[bool] = ..., post_intervention: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "prompt_token_ids", "sampling", "steering", "monitor", "ignore_policy")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    IGNORE_POLICY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    steering: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    monitor: MonitorOptions
    ignore_policy: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., steering: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ..., monitor: _Optional[_Union[MonitorOptions, _Mapping]] = ..., ignore_policy: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "stop_reason", "usage", "monitor", "request_id", "seed", "text_tail", "alerts")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEXT_TAIL_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop_reason: StopReason
    usage: Usage
    monitor: _containers.RepeatedCompositeFieldContainer[DirectionScores]
    request_id: str
    seed: int
    text_tail: str
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., monitor: _Optional[_Iterable[_Union[DirectionScores, _Mapping]]] = ..., request_id: _Optional[str] = ..., seed: _Optional[int] = ..., text_tail: _Optional[str] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class TokenEvent(_message.Message):
    __slots__ = ("index", "token_id", "text_delta", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    index: int
    token_id: int
    text_delta: str
    scores: _containers.ScalarMap[str, float]
    def __init__(self, index: _Optional[int] = ..., token_id: _Optional[int] = ..., text_delta: _Optional[str] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("token", "final")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    token: TokenEvent
    final: GenerateResponse
    def __init__(self, token: _Optional[_Union[TokenEvent, _Mapping]] = ..., final: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "steering")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    name: str
    steering: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    def __init__(self, name: _Optional[str] = ..., steering: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("prompt", "messages", "prompt_token_ids", "sampling", "variants", "monitor")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    monitor: MonitorOptions
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., monitor: _Optional[_Union[MonitorOptions, _Mapping]] = ...) -> None: ...

class VariantResult(_message.Message):
    __slots__ = ("name", "result", "diverges_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DIVERGES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    result: GenerateResponse
    diverges_at: int
    def __init__(self, name: _Optional[str] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ..., diverges_at: _Optional[int] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("variants", "seed")
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    variants: _containers.RepeatedCompositeFieldContainer[VariantResult]
    seed: int
    def __init__(self, variants: _Optional[_Iterable[_Union[VariantResult, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "messages", "prompt_token_ids", "response", "response_token_ids", "steering", "monitor", "ignore_policy")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    IGNORE_POLICY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    response: str
    response_token_ids: _containers.RepeatedScalarFieldContainer[int]
    steering: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    monitor: MonitorOptions
    ignore_policy: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., response: _Optional[str] = ..., response_token_ids: _Optional[_Iterable[int]] = ..., steering: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ..., monitor: _Optional[_Union[MonitorOptions, _Mapping]] = ..., ignore_policy: _Optional[bool] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("usage", "response_token_ids", "monitor", "alerts")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    response_token_ids: _containers.RepeatedScalarFieldContainer[int]
    monitor: _containers.RepeatedCompositeFieldContainer[DirectionScores]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ..., response_token_ids: _Optional[_Iterable[int]] = ..., monitor: _Optional[_Iterable[_Union[DirectionScores, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class LayerVector(_message.Message):
    __slots__ = ("layer", "values")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, layer: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("mu", "sigma", "threshold", "target_fpr", "n")
    MU_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    mu: float
    sigma: float
    threshold: float
    target_fpr: float
    n: int
    def __init__(self, mu: _Optional[float] = ..., sigma: _Optional[float] = ..., threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("model_id", "config_hash", "tokenizer_hash")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_HASH_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    config_hash: str
    tokenizer_hash: str
    def __init__(self, model_id: _Optional[str] = ..., config_hash: _Optional[str] = ..., tokenizer_hash: _Optional[str] = ...) -> None: ...

class Direction(_message.Message):
    __slots__ = ("name", "layers", "monitor_layer", "hidden_size", "calibrated", "calibration", "provenance", "method", "n_examples", "created_at", "description", "vectors", "removal", "feature", "clamp_layers")
    class CalibrationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Calibration
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Calibration, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_LAYER_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    N_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    CLAMP_LAYERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    monitor_layer: int
    hidden_size: int
    calibrated: bool
    calibration: _containers.MessageMap[str, Calibration]
    provenance: Provenance
    method: str
    n_examples: int
    created_at: str
    description: str
    vectors: _containers.RepeatedCompositeFieldContainer[LayerVector]
    removal: Removal
    feature: SaeFeature
    clamp_layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., monitor_layer: _Optional[int] = ..., hidden_size: _Optional[int] = ..., calibrated: _Optional[bool] = ..., calibration: _Optional[_Mapping[str, Calibration]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., method: _Optional[str] = ..., n_examples: _Optional[int] = ..., created_at: _Optional[str] = ..., description: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[LayerVector, _Mapping]]] = ..., removal: _Optional[_Union[Removal, _Mapping]] = ..., feature: _Optional[_Union[SaeFeature, _Mapping]] = ..., clamp_layers: _Optional[_Iterable[int]] = ...) -> None: ...

class SaeFeature(_message.Message):
    __slots__ = ("index", "activation", "bias", "threshold", "b_dec_proj", "source", "encoder")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    B_DEC_PROJ_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    index: int
    activation: str
    bias: float
    threshold: float
    b_dec_proj: float
    source: str
    encoder: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, index: _Optional[int] = ..., activation: _Optional[str] = ..., bias: _Optional[float] = ..., threshold: _Optional[float] = ..., b_dec_proj: _Optional[float] = ..., source: _Optional[str] = ..., encoder: _Optional[_Iterable[float]] = ...) -> None: ...

class Removal(_message.Message):
    __slots__ = ("mode", "strength", "positions", "layers")
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    mode: SteeringMode
    strength: float
    positions: SteeringPositions
    layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, mode: _Optional[_Union[SteeringMode, str]] = ..., strength: _Optional[float] = ..., positions: _Optional[_Union[SteeringPositions, str]] = ..., layers: _Optional[_Iterable[int]] = ...) -> None: ...

class ListDirectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDirectionsResponse(_message.Message):
    __slots__ = ("directions",)
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    directions: _containers.RepeatedCompositeFieldContainer[Direction]
    def __init__(self, directions: _Optional[_Iterable[_Union[Direction, _Mapping]]] = ...) -> None: ...

class GetDirectionRequest(_message.Message):
    __slots__ = ("name", "include_vectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_vectors: bool
    def __init__(self, name: _Optional[str] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class PutDirectionRequest(_message.Message):
    __slots__ = ("name", "vectors", "safetensors", "monitor_layer", "calibration", "description", "strict", "removal", "file", "format", "feature", "numbering", "sae_config")
    class CalibrationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Calibration
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Calibration, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_LAYER_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    NUMBERING_FIELD_NUMBER: _ClassVar[int]
    SAE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    vectors: _containers.RepeatedCompositeFieldContainer[LayerVector]
    safetensors: bytes
    monitor_layer: int
    calibration: _containers.MessageMap[str, Calibration]
    description: str
    strict: bool
    removal: Removal
    file: bytes
    format: str
    feature: int
    numbering: str
    sae_config: str
    def __init__(self, name: _Optional[str] = ..., vectors: _Optional[_Iterable[_Union[LayerVector, _Mapping]]] = ..., safetensors: _Optional[bytes] = ..., monitor_layer: _Optional[int] = ..., calibration: _Optional[_Mapping[str, Calibration]] = ..., description: _Optional[str] = ..., strict: _Optional[bool] = ..., removal: _Optional[_Union[Removal, _Mapping]] = ..., file: _Optional[bytes] = ..., format: _Optional[str] = ..., feature: _Optional[int] = ..., numbering: _Optional[str] = ..., sae_config: _Optional[str] = ...) -> None: ...

class PutDirectionResponse(_message.Message):
    __slots__ = ("direction", "warnings")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, direction: _Optional[_Union[Direction, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDirectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDirectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContrastiveExample(_message.Message):
    __slots__ = ("prompt", "messages", "response", "positive")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    response: str
    positive: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., response: _Optional[str] = ..., positive: _Optional[bool] = ...) -> None: ...

class PersonaPrompts(_message.Message):
    __slots__ = ("questions", "positive_systems", "negative_systems", "max_new_tokens")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SYSTEMS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SYSTEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedScalarFieldContainer[str]
    positive_systems: _containers.RepeatedScalarFieldContainer[str]
    negative_systems: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    def __init__(self, questions: _Optional[_Iterable[str]] = ..., positive_systems: _Optional[_Iterable[str]] = ..., negative_systems: _Optional[_Iterable[str]] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class ComputeDirectionRequest(_message.Message):
    __slots__ = ("name", "examples", "persona", "pooling", "layers", "target_fpr", "held_out_share", "seed", "store", "return_file", "description", "bootstrap_resamples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    RETURN_FILE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    examples: _containers.RepeatedCompositeFieldContainer[ContrastiveExample]
    persona: PersonaPrompts
    pooling: Pooling
    layers: _containers.RepeatedScalarFieldContainer[int]
    target_fpr: float
    held_out_share: float
    seed: int
    store: bool
    return_file: bool
    description: str
    bootstrap_resamples: int
    def __init__(self, name: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[ContrastiveExample, _Mapping]]] = ..., persona: _Optional[_Union[PersonaPrompts, _Mapping]] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., layers: _Optional[_Iterable[int]] = ..., target_fpr: _Optional[float] = ..., held_out_share: _Optional[float] = ..., seed: _Optional[int] = ..., store: _Optional[bool] = ..., return_file: _Optional[bool] = ..., description: _Optional[str] = ..., bootstrap_resamples: _Optional[int] = ...) -> None: ...

class ComputeProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "eta_seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    eta_seconds: float
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class LayerSeparation(_message.Message):
    __slots__ = ("layer", "auroc", "auroc_lo", "auroc_hi", "cohens_d", "norm")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    AUROC_LO_FIELD_NUMBER: _ClassVar[int]
    AUROC_HI_FIELD_NUMBER: _ClassVar[int]
    COHENS_D_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    layer: int
    auroc: float
    auroc_lo: float
    auroc_hi: float
    cohens_d: float
    norm: float
    def __init__(self, layer: _Optional[int] = ..., auroc: _Optional[float] = ..., auroc_lo: _Optional[float] = ..., auroc_hi: _Optional[float] = ..., cohens_d: _Optional[float] = ..., norm: _Optional[float] = ...) -> None: ...

class ComputeDirectionResult(_message.Message):
    __slots__ = ("direction", "layers", "monitor_layer", "pooling", "n_train", "n_held_out", "held_out_fpr", "stored", "safetensors")
    class HeldOutFprEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_LAYER_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_FIELD_NUMBER: _ClassVar[int]
    N_HELD_OUT_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_FPR_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    layers: _containers.RepeatedCompositeFieldContainer[LayerSeparation]
    monitor_layer: int
    pooling: Pooling
    n_train: int
    n_held_out: int
    held_out_fpr: _containers.ScalarMap[str, float]
    stored: bool
    safetensors: bytes
    def __init__(self, direction: _Optional[_Union[Direction, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerSeparation, _Mapping]]] = ..., monitor_layer: _Optional[int] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., n_train: _Optional[int] = ..., n_held_out: _Optional[int] = ..., held_out_fpr: _Optional[_Mapping[str, float]] = ..., stored: _Optional[bool] = ..., safetensors: _Optional[bytes] = ...) -> None: ...

class ComputeDirectionEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ComputeProgress
    result: ComputeDirectionResult
    def __init__(self, progress: _Optional[_Union[ComputeProgress, _Mapping]] = ..., result: _Optional[_Union[ComputeDirectionResult, _Mapping]] = ...) -> None: ...

class SteeringPolicy(_message.Message):
    __slots__ = ("terms", "enforced", "alerts")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    enforced: bool
    alerts: _containers.RepeatedCompositeFieldContainer[AlertRule]
    def __init__(self, terms: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ..., enforced: _Optional[bool] = ..., alerts: _Optional[_Iterable[_Union[AlertRule, _Mapping]]] = ...) -> None: ...

class GetSteeringRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetSteeringRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: SteeringPolicy
    def __init__(self, policy: _Optional[_Union[SteeringPolicy, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_new_tokens", "max_prompt_tokens", "max_queued", "max_variants", "max_directions", "allow_red_team")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_RED_TEAM_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    max_prompt_tokens: int
    max_queued: int
    max_variants: int
    max_directions: int
    allow_red_team: bool
    def __init__(self, max_new_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_queued: _Optional[int] = ..., max_variants: _Optional[int] = ..., max_directions: _Optional[int] = ..., allow_red_team: _Optional[bool] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model_id", "architecture", "num_layers", "hidden_size", "vocab_size", "dtype", "device", "max_context", "limits", "server_version", "serving")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype: str
    device: str
    max_context: int
    limits: Limits
    server_version: str
    serving: ServingSettings
    def __init__(self, model_id: _Optional[str] = ..., architecture: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., max_context: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., server_version: _Optional[str] = ..., serving: _Optional[_Union[ServingSettings, _Mapping]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token_ids", "tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ServingSettings(_message.Message):
    __slots__ = ("kv_cache_tokens", "num_blocks", "page_size", "max_batch_tokens", "max_requests_per_batch", "attn_implementation", "compiled", "cuda_graphs")
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    ATTN_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    COMPILED_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    kv_cache_tokens: int
    num_blocks: int
    page_size: int
    max_batch_tokens: int
    max_requests_per_batch: int
    attn_implementation: str
    compiled: bool
    cuda_graphs: bool
    def __init__(self, kv_cache_tokens: _Optional[int] = ..., num_blocks: _Optional[int] = ..., page_size: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_requests_per_batch: _Optional[int] = ..., attn_implementation: _Optional[str] = ..., compiled: _Optional[bool] = ..., cuda_graphs: _Optional[bool] = ...) -> None: ...

class WatchMonitorRequest(_message.Message):
    __slots__ = ("directions", "min_score", "alerts_only", "buffer_size")
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    ALERTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    directions: _containers.RepeatedScalarFieldContainer[str]
    min_score: float
    alerts_only: bool
    buffer_size: int
    def __init__(self, directions: _Optional[_Iterable[str]] = ..., min_score: _Optional[float] = ..., alerts_only: _Optional[bool] = ..., buffer_size: _Optional[int] = ...) -> None: ...

class MonitorEvent(_message.Message):
    __slots__ = ("request_id", "time", "rpc", "front_end", "variant", "monitor", "alerts", "steering", "policy_applied", "policy_enforced", "stop_reason", "usage", "dropped")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    FRONT_END_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    POLICY_APPLIED_FIELD_NUMBER: _ClassVar[int]
    POLICY_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time: float
    rpc: str
    front_end: str
    variant: str
    monitor: _containers.RepeatedCompositeFieldContainer[DirectionScores]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    steering: _containers.RepeatedCompositeFieldContainer[SteeringTerm]
    policy_applied: bool
    policy_enforced: bool
    stop_reason: StopReason
    usage: Usage
    dropped: int
    def __init__(self, request_id: _Optional[str] = ..., time: _Optional[float] = ..., rpc: _Optional[str] = ..., front_end: _Optional[str] = ..., variant: _Optional[str] = ..., monitor: _Optional[_Iterable[_Union[DirectionScores, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., steering: _Optional[_Iterable[_Union[SteeringTerm, _Mapping]]] = ..., policy_applied: _Optional[bool] = ..., policy_enforced: _Optional[bool] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...
