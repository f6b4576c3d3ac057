from __future__ import annotations

from django import forms

from webapp.corpora.models import Corpus


class CorpusForm(forms.ModelForm):
    class Meta:
        model = Corpus
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        help_texts = {"description": "What the documents are about (shown to your team, and on the expert's card)."}


class StartUploadForm(forms.Form):
    """The record of one file, created before its bytes are sent."""

    name = forms.CharField(max_length=1000, help_text="The file's name, with its folder path inside a dropped folder.")
    # The upper bound is the column's (a PostgreSQL bigint): a larger size would fail the INSERT, not the form.
    size = forms.IntegerField(min_value=0, max_value=2**63 - 1, help_text="Size in bytes.")


class CsvColumnForm(forms.Form):
    column = forms.CharField(max_length=200)


class DeleteCorpusForm(forms.Form):
    confirm = forms.CharField(max_length=120, help_text="Type the corpus name to confirm.")

    def __init__(self, *args: object, corpus: Corpus, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.corpus = corpus

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"]
        if value.strip() != self.corpus.name:
            raise forms.ValidationError("The name does not match.")
        return value
