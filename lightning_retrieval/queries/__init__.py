"""User queries (registry kind ``queries``): what the user tower is asked, returned as one ``UserQueries``."""

from lightning_retrieval.queries.base import (
    QueriesFactory,
    QueryLoss,
    QueryPenalty,
    UserEncoder,
    UserQueries,
    UserQueryModule,
)
from lightning_retrieval.queries.combined import CombinedQueries
from lightning_retrieval.queries.interests import InterestQueries, interest_collapse, serving_interest_count
from lightning_retrieval.queries.regularizers import InterestRegularizer, RoutingRegularization
from lightning_retrieval.queries.single import SingleQuery
from lightning_retrieval.queries.topics import ConditionTable, TopicConditionQueries

__all__ = [
    "CombinedQueries",
    "ConditionTable",
    "InterestQueries",
    "InterestRegularizer",
    "QueriesFactory",
    "QueryLoss",
    "QueryPenalty",
    "RoutingRegularization",
    "SingleQuery",
    "TopicConditionQueries",
    "UserEncoder",
    "UserQueries",
    "UserQueryModule",
    "interest_collapse",
    "serving_interest_count",
]
